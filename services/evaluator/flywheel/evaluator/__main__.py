from flywheel.evaluator.main import main

main()
