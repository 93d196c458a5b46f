"""WebRTC building blocks with no gateway state, shared by the gateway and the simulator (offers, aiortc hooks)."""
