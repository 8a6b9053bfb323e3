"""The ``tracking`` section: where a run is also recorded for an experiment tracker
(rayagg/tracking/). Off unless named; a run's own files do not depend on it.

```yaml
tracking:
  tensorboard: true                 # or {log_dir: /somewhere}; default RUN_DIR/tensorboard
  mlflow:
    tracking_uri: http://mlflow:5000  # default $MLFLOW_TRACKING_URI, else
                                      # sqlite:///<RUN_DIR's parent>/mlflow.db
    experiment: fedagg-sweeps         # default: the config's name
```

Either tracker also takes ``true`` (on, every default) and ``false`` or ``null`` (off).
Credentials (an MLflow server's token) come from the environment as MLflow reads them
(``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``), never from here.
"""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _on_off(value: object) -> object:
    """``true`` is a tracker with every default, ``false`` none (as ``null``)."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


class TensorBoardConfig(_Section):
    """TensorBoard event files; ``log_dir`` None: RUN_DIR/tensorboard (a local RUN_DIR;
    a run on object storage needs a local ``log_dir``)."""

    log_dir: Optional[str] = None


class MlflowConfig(_Section):
    """An MLflow run per rayagg run; ``tracking_uri`` None: ``$MLFLOW_TRACKING_URI``, else a
    SQLite store beside the run directory (``<RUN_DIR's parent>/mlflow.db``, artifacts in
    ``<RUN_DIR's parent>/mlartifacts``), so runs side by side share one store;
    ``experiment`` None: the config's name."""

    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None


class TrackingConfig(_Section):
    """Which experiment trackers record the run (rayagg/tracking/); both off by default."""

    tensorboard: Annotated[Optional[TensorBoardConfig], BeforeValidator(_on_off)] = None
    mlflow: Annotated[Optional[MlflowConfig], BeforeValidator(_on_off)] = None

    @property
    def enabled(self) -> bool:
        return self.tensorboard is not None or self.mlflow is not None
