from flywheel.registry.main import main

main()
