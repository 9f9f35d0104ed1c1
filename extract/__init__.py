"""Extract stage: videos (decord, PyAV fallback) -> per-frame backbone features in an HDF5 store.

Public API (import the submodules; this package stays light because decode workers import it):

    extract.config.ExtractConfig        the stage's settings
    extract.stage.run_extract(...)      run the stage -> summary dict; writes videos.parquet
    extract.store.FeatureStore(path)    read features (get, get_many, sample_batch, rows_batch, load_packed, meta)
    extract.registry.BACKBONES          the backbone registry: name -> factory, feature dim, preprocessing
    extract.backbones.create(name, ...) a frame backbone: a registered name or timm/<timm model>
    extract.encoder.encoder_from_config(cfg)  the FrameEncoder of an ExtractConfig (runners, predict)
    extract.bench.bench_extract / bench_store
"""
