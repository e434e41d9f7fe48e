import distaff


def test_all_names_exist_and_are_public():
    for name in distaff.__all__:
        assert hasattr(distaff, name), name
        assert not name.startswith("_")
    public = {n for n in dir(distaff) if not n.startswith("_")}
    assert set(distaff.__all__) <= public
