"""napari dock widgets of napari-fcres: train, inspect, predict, correct and export."""
