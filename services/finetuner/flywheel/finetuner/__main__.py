from flywheel.finetuner.main import main

main()
