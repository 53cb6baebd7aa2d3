"""The pdserve router: gRPC front door, routing policy, dispatch to prefill and decode workers."""
