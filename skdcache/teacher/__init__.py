"""Stage 3, the teacher: parse and load it (`load`), what precompute stores (`options`), one forward pass reduced
to the cached targets (`reduce`), a block of rows run through it (`blocks`), where they came from (`provenance`)
and its metric on the eval split (`metric`)."""
