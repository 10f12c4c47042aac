"""The teacher-output cache: format (what), store (where), writer and reader."""
