"""Notifications: delivering deployment events to webhooks and Slack (DESIGN.md §7)."""
