"""`python -m payments_demo`: the demo's command line (see `payments_demo.cli`)."""

from payments_demo.cli import main

if __name__ == "__main__":
    main()
