"""The ingest stage: a dataset's label lists, read by its format's reader (readers), become the
canonical video and class tables (stage)."""
