"""The run store: every scan as a run committed layer by layer (so scans resume), the one scan-into-store path of the
CLI and the dashboard, and the schedules, diagnoses and exports kept beside the runs as artifacts."""
