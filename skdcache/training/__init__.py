"""Stage 7, the parts the `train` recipe is built from: settings (`config`), the run plan (`plan`, `pilots`),
batches (`loader`), the student, evaluation, checkpoints and the run record."""
