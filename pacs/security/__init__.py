"""Who is calling and what they may do: accounts, credentials, roles and the access policy."""
