from setuptools import find_packages, setup

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
    # moto[server]: an S3 endpoint started inside the tests (tests/test_object_store.py)
    extras_require={"test": ["pytest>=8", "moto[server]>=5"]},
    entry_points={"console_scripts": ["rayagg=rayagg.cli:main"]},
)
