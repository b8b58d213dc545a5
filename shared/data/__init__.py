"""Data that needs no download: scikit-learn's bundled digits and a seeded sensor generator."""

from shared.data.digits import load_digits_dataset
from shared.data.sensors import SensorDriftSpec, generate_sensor_data

__all__ = ["SensorDriftSpec", "generate_sensor_data", "load_digits_dataset"]
