"""Ray Jobs entrypoint: runs ``rayagg run`` inside the cluster the job was submitted to.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/fedagg_job.py jobs/configs/demo.yaml [--rounds N] [--out DIR]

The job's working directory (this repository) is on every worker's path, so the node
actors import rayagg from it.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from rayagg.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["run", *sys.argv[1:], "--address", "auto"])
