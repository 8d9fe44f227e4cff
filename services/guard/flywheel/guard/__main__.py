from flywheel.guard.main import main

main()
