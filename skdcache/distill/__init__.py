"""Stage 6, the distillation math: KD losses (`losses`) and the objective of one step (`objective`)."""
