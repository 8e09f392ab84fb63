"""RFT trainer: rewarded samples -> TRL LoRA update -> gate -> model-version event."""
