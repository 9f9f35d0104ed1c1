"""Inference: model bundles (bundle, bundle_check) and ``predict`` / ``export`` (predict)."""
