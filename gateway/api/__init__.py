"""The HTTP surface: agent REST + WebSocket, integrator event stream, ops endpoints."""
