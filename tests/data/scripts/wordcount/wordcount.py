"""Spark's wordcount example as a PySpark user writes it: a SparkSession, the text file named on
the command line (beside this script), counts printed; then kept in KINDLING_OUTPUT."""

import json
import os
import sys
from operator import add

from pyspark.sql import SparkSession

from textutil import words

if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("Usage: wordcount <file>", file=sys.stderr)
        sys.exit(-1)

    spark = SparkSession.builder.appName("PythonWordCount").getOrCreate()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), sys.argv[1])
    lines = spark.read.text(path).rdd.map(lambda r: r[0])
    counts = lines.flatMap(words).map(lambda word: (word, 1)).reduceByKey(add)
    output = counts.collect()
    for (word, count) in sorted(output):
        print(f"{word}: {count}")
    with open(os.path.join(os.environ["KINDLING_OUTPUT"], "counts.json"), "w") as f:
        json.dump(dict(output), f)
    spark.stop()
