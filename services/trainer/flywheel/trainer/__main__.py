from flywheel.trainer.main import main

main()
