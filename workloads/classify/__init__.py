"""classify, the chapter's transfer learning on Spark ML: its declaration (job.py), the program
(main.py), sparkdl's image API (deep_image.py) and the Keras ImageNet models (image_models.py).
`python -m workloads.classify --help` runs it."""
