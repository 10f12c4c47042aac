"""Stage 2, the teacher-output cache: format (what), store (where), writer and reader."""
