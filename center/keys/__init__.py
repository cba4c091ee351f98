"""Who may sign: key lifecycle, binding, recovery tickets, operators, store names,
the issuer CA and policy, the center's own key."""
