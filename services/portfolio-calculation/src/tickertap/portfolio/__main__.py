from tickertap.portfolio.main import main

main()
