"""Delivery channels: one package per provider, each sending and parsing its own webhooks."""
