"""Users and logins on Redis, one job per module: passwords.py (policy, bcrypt), records.py
(user records), ratelimit.py (per client and per proxy), lockout.py (per username),
tokens.py (API tokens), audit.py (the audit log), users.py (UserStore, all of them
together), bootstrap.py (start-up accounts, production settings), errors.py."""
