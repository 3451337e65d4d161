"""The loggers the training pipeline announces on: its stages (`ml.pipeline.stage`) and the
study a run joins (`ml.study`).

Telemetry subscribes to the stages with a logging handler (`elk.collectors.training`) and the
CLI prints the study lines, so `ml` never imports either; the names live here, light to
import, for both sides.
"""

STAGE_LOGGER = "ml.stages"
STUDY_LOGGER = "ml.study"
