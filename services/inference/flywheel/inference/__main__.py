from flywheel.inference.main import main

main()
