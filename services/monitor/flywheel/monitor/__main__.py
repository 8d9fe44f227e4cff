"""`python -m flywheel.monitor`: run the monitor service."""
from flywheel.monitor.main import main

main()
