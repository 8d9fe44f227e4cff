from flywheel.review.main import main

main()
