# The chapter's transfer-learning listing (sparkdl, buses vs cars), as `fab run` runs it: its
# findspark and --packages lines are gone, and so are its executor and driver memory settings
# (70g and 50g: the cluster's confs size the executors to its hosts). fab runs the script in its
# run's folder, so the photos shipped beside it are read through __file__.
import os

here = os.path.dirname(os.path.abspath(__file__))

from pyspark.sql import SparkSession

spark = SparkSession.builder \
      .appName("ImageClassification") \
      .getOrCreate()

import pyspark.sql.functions as f
import sparkdl as dl
from pyspark.ml.image import ImageSchema

dfbuses = ImageSchema.readImages(os.path.join(here, 'buses/')).withColumn('label', f.lit(0))
dfcars = ImageSchema.readImages(os.path.join(here, 'cars/')).withColumn('label', f.lit(1))

dfbuses.show(5)
dfcars.show(5)

trainDFbuses, testDFbuses = dfbuses.randomSplit([0.60,0.40], seed = 123)
trainDFcars, testDFcars = dfcars.randomSplit([0.60,0.40], seed = 122)


trainDF = trainDFbuses.unionAll(trainDFcars)
testDF = testDFbuses.unionAll(testDFcars)

from pyspark.ml.classification import LogisticRegression
from pyspark.ml import Pipeline
vectorizer = dl.DeepImageFeaturizer(inputCol="image", outputCol="features",
                    modelName="InceptionV3")
logreg = LogisticRegression(maxIter=30, labelCol="label")
pipeline = Pipeline(stages=[vectorizer, logreg])
pipeline_model = pipeline.fit(trainDF)

predictDF = pipeline_model.transform(testDF)
predictDF.select('prediction', 'label').show(n = testDF.toPandas().shape[0], truncate=False)

predictDF.crosstab('prediction', 'label').show()

from pyspark.ml.evaluation import MulticlassClassificationEvaluator
scoring = predictDF.select("prediction", "label")
accuracy_score = MulticlassClassificationEvaluator(metricName="accuracy")
rate = accuracy_score.evaluate(scoring)*100
print("accuracy: {}%" .format(round(rate,2)))
