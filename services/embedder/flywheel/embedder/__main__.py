from flywheel.embedder.main import main

main()
