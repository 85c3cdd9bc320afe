"""Governance (docs/DESIGN.md section 6): deployment rules, approvals, the audit trail.

`rules` is pure: it parses the rules file and decides. The store supplies the facts
a decision needs (store/governance.py) and keeps approvals and the audit trail.
"""
