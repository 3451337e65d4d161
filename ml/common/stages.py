"""The logger the training pipeline announces its stages on (`ml.pipeline.stage`).

Telemetry subscribes to it with a logging handler (`elk.collectors.training`), so `ml` never
imports `elk`; the name lives here, light to import, for both sides.
"""

STAGE_LOGGER = "ml.stages"
