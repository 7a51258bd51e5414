"""What node and tools share to talk gRPC: certificates and identities, channel options, key files,
the one table between gRPC status codes and the exception tree, and the ``to_proto`` / ``from_proto``
pairs between the protocol's data model and the generated messages. Imports the protocol, never tools.
"""
