"""`python -m cadyq ...` and `torchrun -m cadyq train ...`."""
from cadyq.entry import main

if __name__ == "__main__":
    raise SystemExit(main())
