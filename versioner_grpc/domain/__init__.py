"""The domain: lifecycle rules, input rules and environment types.

Pure Python: nothing here imports gRPC, protobuf or Peewee, so every rule can be
read and tested on its own.
"""
