from tickertap.ledger.main import main

main()
