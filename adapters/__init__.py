"""Department adapters shipped with the hub. Each registers through the hub.adapters entry point."""
