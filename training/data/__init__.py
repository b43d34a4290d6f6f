"""Training data builders: MCP tool-call trajectories and survey-writing samples."""
