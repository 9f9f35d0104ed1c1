"""Generated datasets: the demo's videos (demo_data) and the synthetic feature benchmark (synthetic_data)."""
