"""Publishing: provenance and the side-car (pure), model cards (template + data), and the Hub (network only)."""
