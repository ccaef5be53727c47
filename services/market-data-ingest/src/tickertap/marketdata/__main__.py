from tickertap.marketdata.main import main

main()
