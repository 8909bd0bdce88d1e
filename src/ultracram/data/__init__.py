"""Data: tokenizers, pretraining corpora and shards, MLM batches, GLUE tasks."""
