"""What happens to each attribute, as data: profiles, options, tables and job recipes.

Nothing here reads or writes files' bytes: the engines apply what the policy resolves.
"""
