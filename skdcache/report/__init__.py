"""Stage 8, finished runs compared: read them back (`runs`), summary tables (`summary`) and plots (`plots`)."""
