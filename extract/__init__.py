"""Extract stage: videos (decord, PyAV fallback) -> per-frame backbone features in an HDF5 store.

Import the submodules; this package stays light (decode workers import it). Entry points:
extract.config.ExtractConfig, extract.stage.run_extract, extract.store (the feature store),
extract.registry (backbones: lookup, create), extract.encoder.encoder_from_config. The modules and
how they depend on each other: docs/architecture.md ("Extract").
"""
