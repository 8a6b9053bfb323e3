from setuptools import find_packages, setup

TRACKING = ["tensorboard>=2.14", "mlflow-skinny>=2.16", "sqlalchemy>=2", "alembic"]

setup(
    name="rayagg",
    version="0.1.0",
    description="Agglomerative Federated Learning (FedAgg, INFOCOM 2024) on Ray",
    packages=find_packages(include=["rayagg", "rayagg.*"]),
    python_requires=">=3.10",
    install_requires=[
        "ray[default]>=2.60",
        "torch>=2.9",
        "torchvision>=0.24",
        "numpy",
        "pyarrow",  # Parquet run files; pyarrow.fs for run directories on s3:// and gs://
        "click>=8",
        "pyyaml",  # the config format
        "pydantic>=2",  # config validation with field paths (also a ray[default] dependency)
        "matplotlib",  # accuracy.png
    ],
    # tracking (rayagg/tracking/): TensorBoard's event files (torch's SummaryWriter needs the
    # tensorboard package) and MLflow (mlflow-skinny: the client, no server; SQLAlchemy and
    # Alembic for its default SQLite store). Optional: a run without them only warns.
    # test: moto[server], an S3 endpoint started inside the tests (tests/test_object_store.py),
    # and the trackers, whose files the tests read back (tests/test_tracking.py).
    extras_require={
        "tracking": TRACKING,
        "test": ["pytest>=8", "moto[server]>=5", *TRACKING],
    },
    entry_points={"console_scripts": ["rayagg=rayagg.cli:main"]},
)
